"""What the bot keeps: SQLite (schema migrations, jobs, jams, server controls, the patient write gate) and the disk's retention."""
