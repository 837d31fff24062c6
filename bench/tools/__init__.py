"""Tools built on the harness, outside its core: ``bench demo`` (:mod:`.demo`, with the small CLIP it
pretrains, :mod:`.demo_clip`) and ``bench perf`` (:mod:`.perf`, :mod:`.perf_encoder`, and the paper-grid
cost model :mod:`.grid_cost`). They use the public APIs of the core, the methods and the datasets only.
"""
