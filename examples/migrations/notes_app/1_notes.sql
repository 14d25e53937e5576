-- The notes app's schema (examples/notes_app.rs), valid on PostgreSQL, MySQL/MariaDB and SQLite.
CREATE TABLE notes (
    title VARCHAR(100) PRIMARY KEY,
    body VARCHAR(1000) NOT NULL
);
