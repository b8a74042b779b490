"""Op library: one module per op family. Each wrapper checks shapes, dtypes and contiguity,
picks a shader variant and records a dispatch into a Graph; each op has a numpy twin named
<op>_ref in the same module."""
