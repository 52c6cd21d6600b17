"""Image operations: colour fix, resizing and sizes, region masks."""
