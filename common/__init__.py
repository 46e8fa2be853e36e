"""Small utilities shared by the core packages: image files, key colours, atomic writes."""
