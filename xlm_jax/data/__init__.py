"""Text in, batches out: corpora, temperature sampling, tokenizer, packing, masking, tf.data."""
