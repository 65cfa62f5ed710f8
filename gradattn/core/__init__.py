"""The layer every other imports: errors, atomic file I/O, paths, settings, the stage
runner, torch files, device choice, durations in words. Imports nothing else of gradattn."""
