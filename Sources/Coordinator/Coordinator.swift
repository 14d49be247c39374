// Module Coordinator: implementation in progress.
