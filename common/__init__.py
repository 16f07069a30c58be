"""What two or more stages share: config, model and corpus loading, the store schema, progress."""
