"""DynFocus (CVPR 2025): the family dfrt was built for. Its parts live in dfrt.model, dfrt.export and
dfrt.runtime (visual, selection, budget); this folder is its entry in the family registry."""
