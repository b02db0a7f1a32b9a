"""Source -> raw snapshot: bundled data, Materials Project (mp-api), Open Catalyst; validation and quarantine."""
