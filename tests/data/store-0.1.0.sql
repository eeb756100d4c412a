-- A store written by Gotaxy 0.1.0 (before schema versions), one row or more in every table.
-- Made with the 0.1.0 code; tests/test_store_migrations.py migrates it.
BEGIN TRANSACTION;
CREATE TABLE admins (
	id INTEGER NOT NULL, 
	username VARCHAR(64), password_hash TEXT, created_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "admins" VALUES(1,'admin','$argon2id$v=19$m=65536,t=3,p=4$AYUqmSRhUPHvqdeqUCKrWA$46Ay9HXwtxENH7yHOQfXyl9t4/HGCYX5xOEPL+fwfQo',1790000000.0);
CREATE TABLE clients (
	id INTEGER NOT NULL, 
	name VARCHAR(64), online BOOLEAN, address VARCHAR(128), version VARCHAR(32), connected_at FLOAT, last_seen_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "clients" VALUES(1,'laptop',1,'192.0.2.10:5000','0.1.0',1790000000.0,1790000000.0);
CREATE TABLE events (
	id INTEGER NOT NULL, 
	at FLOAT, type VARCHAR(32), client VARCHAR(64), tunnel VARCHAR(64), address VARCHAR(128), detail TEXT, count INTEGER, 
	PRIMARY KEY (id)
);
INSERT INTO "events" VALUES(1,1790000000.0,'token.created','laptop',NULL,NULL,NULL,1);
INSERT INTO "events" VALUES(2,1790000000.0,'token.created','nas',NULL,NULL,NULL,1);
INSERT INTO "events" VALUES(3,1790000000.0,'token.revoked','nas',NULL,NULL,NULL,1);
INSERT INTO "events" VALUES(4,1790000000.0,'client.connected','laptop',NULL,'192.0.2.10:5000','version 0.1.0',1);
INSERT INTO "events" VALUES(5,1790000000.0,'tunnel.opened','laptop','ssh',NULL,'port 16000 -> 127.0.0.1:22',1);
INSERT INTO "events" VALUES(6,1790000000.0,'tunnel.added','laptop','web',NULL,'port 16001 -> 127.0.0.1:8080',1);
INSERT INTO "events" VALUES(7,1790000000.0,'tunnel.closed','laptop','web',NULL,'not opened yet',1);
INSERT INTO "events" VALUES(8,1790000000.0,'login.failed',NULL,NULL,'203.0.113.5','bad token',3);
CREATE TABLE history_hourly (
	id INTEGER NOT NULL, 
	hour FLOAT, client VARCHAR(64), tunnel VARCHAR(64), samples INTEGER, rtt_avg FLOAT, rtt_max FLOAT, connections_max INTEGER, opened BIGINT, bytes_in BIGINT, bytes_out BIGINT, rate_in_max FLOAT, rate_out_max FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "history_hourly" VALUES(1,1789996400.0,'laptop','ssh',60,0.02,0.05,3,10,1000,2000,5.0,6.0);
CREATE TABLE history_samples (
	id INTEGER NOT NULL, 
	at FLOAT, client VARCHAR(64), tunnel VARCHAR(64), rtt FLOAT, connections INTEGER, opened INTEGER, bytes_in BIGINT, bytes_out BIGINT, rate_in FLOAT, rate_out FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "history_samples" VALUES(1,1790000000.0,'laptop','ssh',NULL,1,2,100,200,1.0,2.0);
CREATE TABLE history_sessions (
	id INTEGER NOT NULL, 
	client VARCHAR(64), started FLOAT, ended FLOAT, reason TEXT, open BOOLEAN, 
	PRIMARY KEY (id)
);
INSERT INTO "history_sessions" VALUES(1,'laptop',1789999400.0,1790000000.0,NULL,1);
CREATE TABLE notification_failures (
	id INTEGER NOT NULL, 
	at FLOAT, target VARCHAR(128), event VARCHAR(64), reason TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO "notification_failures" VALUES(1,1790000000.0,'ops','client.disconnected','HTTP 500');
CREATE TABLE notify_mail (
	id INTEGER NOT NULL, 
	address VARCHAR(254), events TEXT, created_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "notify_mail" VALUES(1,'ops@example.com','["*"]',1790000000.0);
CREATE TABLE notify_webhooks (
	id INTEGER NOT NULL, 
	name VARCHAR(64), url TEXT, secret TEXT, events TEXT, format VARCHAR(16), created_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "notify_webhooks" VALUES(1,'ops','gAAAA-not-a-real-ciphertext',NULL,'["*"]','json',1790000000.0);
CREATE TABLE settings (
	id INTEGER NOT NULL, 
	"key" VARCHAR(64), value TEXT, 
	PRIMARY KEY (id)
);
INSERT INTO "settings" VALUES(1,'tls.join_pin','sha256:0123');
CREATE TABLE tokens (
	id INTEGER NOT NULL, 
	name VARCHAR(64), token_hash VARCHAR(64), created_at FLOAT, expires_at FLOAT, revoked_at FLOAT, last_used_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "tokens" VALUES(1,'laptop','db7ff288a3e9523c8d5d2ba8e26308e156f88db487986aeb479f85bd49618192',1790000000.0,NULL,NULL,NULL);
INSERT INTO "tokens" VALUES(2,'nas','0ac069197028f8df547ddc3403068717acb474ae3ae5423b28c543b344d8c5c5',1790000000.0,NULL,1790000000.0,NULL);
CREATE TABLE tunnels (
	id INTEGER NOT NULL, 
	client VARCHAR(64), name VARCHAR(64), type VARCHAR(16), local_addr VARCHAR(128), remote_port INTEGER, status VARCHAR(16), reason TEXT, updated_at FLOAT, source VARCHAR(8), enabled BOOLEAN, 
	PRIMARY KEY (id)
);
INSERT INTO "tunnels" VALUES(1,'laptop','ssh','tcp','127.0.0.1:22',16000,'up',NULL,1790000000.0,NULL,NULL);
INSERT INTO "tunnels" VALUES(2,'laptop','web','tcp','127.0.0.1:8080',16001,'down','not opened yet',1790000000.0,'server',1);
CREATE TABLE web_api_tokens (
	id INTEGER NOT NULL, 
	name VARCHAR(64), token_hash VARCHAR(64), username VARCHAR(64), created_at FLOAT, last_used_at FLOAT, 
	PRIMARY KEY (id)
);
INSERT INTO "web_api_tokens" VALUES(1,'ci','bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb','admin',1790000000.0,NULL);
CREATE TABLE web_sessions (
	id INTEGER NOT NULL, 
	session_hash VARCHAR(64), username VARCHAR(64), csrf_token VARCHAR(64), created_at FLOAT, last_seen_at FLOAT, expires_at FLOAT, address VARCHAR(128), 
	PRIMARY KEY (id)
);
INSERT INTO "web_sessions" VALUES(1,'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa','admin','ccccccccccccccccccccccccccccccccccccccccccc',1790000000.0,1790000000.0,1790007200.0,'192.0.2.1');
CREATE TABLE web_totp (
	id INTEGER NOT NULL, 
	username VARCHAR(64), secret VARCHAR(64), enabled BOOLEAN, last_step INTEGER, 
	PRIMARY KEY (id)
);
INSERT INTO "web_totp" VALUES(1,'admin','U6PKNNF7T7QC6ISML36H3Z4TWZ4CHRDR',1,5);
CREATE INDEX ix_tokens_5acad6a940ef8aae ON tokens (token_hash);
CREATE INDEX ix_tokens_6ae999552a0d2dca ON tokens (name);
CREATE INDEX ix_clients_6ae999552a0d2dca ON clients (name);
CREATE INDEX ix_tunnels_56bcd982f8b7939a ON tunnels (client, name);
CREATE INDEX ix_tunnels_8ceb2e234ad58f90 ON tunnels (remote_port);
CREATE INDEX ix_events_27e90dfa57c358ac ON events (at);
CREATE INDEX ix_events_d0a3e7f81a9885e9 ON events (type);
CREATE INDEX ix_events_d2a04d71301a8915 ON events (client);
CREATE INDEX ix_admins_249ba36000029bbe ON admins (username);
CREATE INDEX ix_settings_a62f2225bf70bfac ON settings ("key");
CREATE INDEX ix_history_sessions_dff5a46f9df1b2a9 ON history_sessions (client, started);
CREATE INDEX ix_history_sessions_ba92ed73c97b30bc ON history_sessions (ended);
CREATE INDEX ix_history_samples_52e5c7aef294d5d1 ON history_samples (client, tunnel, at);
CREATE INDEX ix_history_hourly_081692a7478742d9 ON history_hourly (client, tunnel, hour);
CREATE INDEX ix_notification_failures_27e90dfa57c358ac ON notification_failures (at);
CREATE INDEX ix_web_sessions_9a27ee81fbc0bb9e ON web_sessions (session_hash);
CREATE INDEX ix_web_api_tokens_5acad6a940ef8aae ON web_api_tokens (token_hash);
CREATE INDEX ix_web_api_tokens_6ae999552a0d2dca ON web_api_tokens (name);
CREATE INDEX ix_web_totp_249ba36000029bbe ON web_totp (username);
CREATE INDEX ix_notify_webhooks_6ae999552a0d2dca ON notify_webhooks (name);
CREATE INDEX ix_notify_mail_c662180230cad147 ON notify_mail (address);
COMMIT;
