"""Watching the served model: Prometheus metrics (`metrics`), the JSONL request log (`request_log`) and
drift of production prompts against the training data (`drift`)."""
