"""Self-supervised pretraining: objectives, the LightningModule and DataModule, the command."""
