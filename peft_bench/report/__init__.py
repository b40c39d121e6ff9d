"""The reporter: the paper's Tables 1-5 and Figure 5 from the run store, each cell beside the
paper's value (`python -m peft_bench.report`; see `__main__`).

grid: a preset's cells and protocol hashes; aggregate: a cell's runs; paper: the paper's values;
profiles: which presets (paper or mini) and which paper columns; tables: the layouts; render:
Markdown / LaTeX / CSV; figure: Figure 5; build: a target into files.
"""
