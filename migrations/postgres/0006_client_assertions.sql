-- The jti of every client assertion accepted, kept until the assertion expires, so that
-- an assertion can be used only once (replays are refused).
CREATE TABLE client_assertions (
    client_id TEXT NOT NULL,
    jti TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    PRIMARY KEY (client_id, jti)
);
