// Module LlamaModel: implementation in progress.
