"""Tests of fewstep.evaluation (a package so module names never clash with other test folders)."""
