"""Test helpers shipped with the package so the pipeline's demo and tests can use them too."""
