"""A job's way from the queue to the channel: fair scheduling, dispatching to the back end, deadlines, status messages and delivery."""
