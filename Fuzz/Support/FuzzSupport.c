// LLVMFuzzerRunDriver is defined by libFuzzer (linked by `-sanitize=fuzzer`); this file only gives the target a source.
#include "FuzzSupport.h"
