// Module Tokenizer: implementation in progress.
