"""`difformer serve`: a model behind HTTP (app.py) with dynamic batching (batcher.py) and a page that shows
a sentence being denoised (static/index.html). Needs the `serve` extra: pip install 'difformer[serve]'."""
