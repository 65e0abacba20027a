-- A server's own default model for /generate (NULL = the config's [bot] default_model_version).
-- Which versions are allowed is the bot's business (it depends on what is configured), so the
-- column is not constrained here: an unusable stored value falls back to the config's default.
ALTER TABLE guild_settings ADD COLUMN default_model_version TEXT;
