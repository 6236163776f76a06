"""Models the project ships ready to export (the embedded default: all-MiniLM-L6-v2)."""
