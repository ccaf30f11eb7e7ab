"""What a run is: the registry schema and loading, the campaign, data checks against the registry."""
