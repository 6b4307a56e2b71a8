"""Per-lesion measurements from arrays with their grid; pure functions returning typed records."""
