"""Multimodal LLM wrapper: conversations, backends, regions, VQA/ICL tasks, scoring and the response cache."""
