// libFuzzer's driver, called from each fuzz target's main.swift. SwiftPM's debug builds rename an executable's
// `main` to `<Target>_main` and alias `main` to it, so libFuzzer's own `main` never links in; the targets call the
// driver themselves (this works in release builds too).
#include <stddef.h>
#include <stdint.h>

int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));
