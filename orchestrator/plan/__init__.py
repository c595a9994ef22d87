"""`orch plan`: what a spec will cost before it meets the queue (torch-free at module level).

shape.py (what a trainer's config says about its model), arithmetic.py (parameters, tokens,
FLOPs, Chinchilla), memory.py (bytes per device), probe.py (N real steps, measured),
projection.py (wall time, requeues, GPU-hours, warnings; also the ETA of a running trainer).
"""
