"""Media tools shared by the bot and the engine without torch: ffmpeg in a child process, and its environment."""
