print("nvfp4 benchmark: not written yet")
