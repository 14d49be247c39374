// Module Transport: implementation in progress.
