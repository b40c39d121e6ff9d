"""The package's Hydra configs (`pkg://peft_bench.conf`), shipped in the wheel; `conf/` at the top of
the repository links here."""
