"""Training the small TRELLIS-architecture model on procedural objects (issue 6)."""
