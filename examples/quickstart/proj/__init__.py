"""The quickstart project: ``proj.tasks`` holds the app and its tasks."""
