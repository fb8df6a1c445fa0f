"""The reliability harness: invariant checks over the real store and side-effect markers, and a results log."""
