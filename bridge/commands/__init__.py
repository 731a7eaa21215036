"""The operator's and developer's commands beside `serve`: tail, replay, schema tools, dev."""
