"""Text data: the embedded corpus, chat formatting, supervised batches, generated tasks."""
