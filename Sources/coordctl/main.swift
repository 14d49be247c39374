print("coordctl: not written yet")
