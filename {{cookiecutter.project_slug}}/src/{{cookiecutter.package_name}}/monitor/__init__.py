"""Watching the served model: Prometheus metrics (`metrics`), what each chat request did and its recording
into the metrics and the log (`accounting`), the JSONL request log (`request_log`) and drift of
production prompts against the training data (`drift`)."""
