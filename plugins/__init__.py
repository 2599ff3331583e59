"""benchbench's built-in plugins (installed as the import package ``benchbench_plugins``).

Each module is a pluggy plugin registered through the ``benchbench`` entry-point
group, exactly as a third-party plugin would be.
"""
