"""`panderm bench`: suites of tasks across data sets and encoders, resumable cells, a leaderboard."""
