"""`python -m rlhf.demo` = the `rlhf-demo` console script."""

from rlhf.demo.pipeline import main

main()
