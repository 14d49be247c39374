print("tokenizer benchmark: not written yet")
