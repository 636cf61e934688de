"""Data: reading parallel text (corpus), the joint subword vocabulary (tokenizer), token arrays on disk
(binarize), `difformer prepare` (prepare), token-count batching (batching) and the quickstart corpus (toy)."""
