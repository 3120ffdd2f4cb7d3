"""Getting labelled patches in: sources, the manifest, the decoded cache, the Dataset."""
