"""Console commands of the runtime package (fer-bench, fer-video); each module has main(argv) -> int."""
