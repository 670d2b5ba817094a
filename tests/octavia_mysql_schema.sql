-- Octavia's tables on the heartbeat path as its alembic migrations leave them on
-- MySQL/MariaDB (`octavia-db-manage upgrade head`), written for these tests from
-- the migrations' facts: column types (SQLAlchemy's Boolean is TINYINT(1), its
-- DateTime is DATETIME without fractional seconds), NOT NULL columns, server
-- defaults, foreign keys and unique keys.  Only the tables the heartbeat path
-- touches and the lookup tables their keys point at; nullable columns of other
-- features (flavors, availability zones, VIP ports, tags) are kept where they sit
-- on these tables, without the foreign keys to tables not made here.  (sqlalchemy-utils'
-- ScalarListType columns are TEXT.)
-- Statements are separated by a semicolon at the end of a line.

CREATE TABLE provisioning_status (
    name VARCHAR(30) NOT NULL, description VARCHAR(255), PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO provisioning_status (name) VALUES ('ACTIVE'), ('PENDING_CREATE'),
    ('PENDING_UPDATE'), ('PENDING_DELETE'), ('DELETED'), ('ERROR'), ('READY'),
    ('BOOTING'), ('ALLOCATED'), ('FAILOVER_STOPPED');

CREATE TABLE operating_status (
    name VARCHAR(30) NOT NULL, description VARCHAR(255), PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO operating_status (name) VALUES ('ONLINE'), ('OFFLINE'), ('DEGRADED'),
    ('ERROR'), ('NO_MONITOR'), ('DRAINING');

CREATE TABLE protocol (
    name VARCHAR(30) NOT NULL, description VARCHAR(255), PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO protocol (name) VALUES ('HTTP'), ('HTTPS'), ('TCP'), ('TERMINATED_HTTPS'),
    ('UDP'), ('PROXY'), ('SCTP'), ('PROXYV2'), ('PROMETHEUS');

CREATE TABLE algorithm (
    name VARCHAR(30) NOT NULL, description VARCHAR(255), PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO algorithm (name) VALUES ('ROUND_ROBIN'), ('LEAST_CONNECTIONS'), ('SOURCE_IP'),
    ('SOURCE_IP_PORT');

CREATE TABLE lb_topology (
    name VARCHAR(36) NOT NULL, description VARCHAR(255), PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO lb_topology (name) VALUES ('SINGLE'), ('ACTIVE_STANDBY');

CREATE TABLE amphora_roles (
    name VARCHAR(36) NOT NULL, description VARCHAR(255), PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO amphora_roles (name) VALUES ('MASTER'), ('BACKUP'), ('STANDALONE');

CREATE TABLE client_authentication_mode (
    name VARCHAR(10) NOT NULL, PRIMARY KEY (name)
) ENGINE=InnoDB;
INSERT INTO client_authentication_mode (name) VALUES ('NONE'), ('OPTIONAL'), ('MANDATORY');

CREATE TABLE load_balancer (
    project_id VARCHAR(36),
    id VARCHAR(36) NOT NULL,
    name VARCHAR(255),
    description VARCHAR(255),
    provisioning_status VARCHAR(16) NOT NULL,
    operating_status VARCHAR(16) NOT NULL,
    enabled TINYINT(1) NOT NULL,
    topology VARCHAR(36),
    server_group_id VARCHAR(36),
    created_at DATETIME,
    updated_at DATETIME,
    provider VARCHAR(64),
    flavor_id VARCHAR(36),
    availability_zone VARCHAR(255),
    PRIMARY KEY (id),
    CONSTRAINT fk_load_balancer_provisioning_status_name FOREIGN KEY (provisioning_status)
        REFERENCES provisioning_status (name),
    CONSTRAINT fk_load_balancer_operating_status_name FOREIGN KEY (operating_status)
        REFERENCES operating_status (name),
    CONSTRAINT fk_lb_topology_name FOREIGN KEY (topology) REFERENCES lb_topology (name)
) ENGINE=InnoDB;

CREATE TABLE pool (
    project_id VARCHAR(36),
    id VARCHAR(36) NOT NULL,
    name VARCHAR(255),
    description VARCHAR(255),
    protocol VARCHAR(16) NOT NULL,
    lb_algorithm VARCHAR(255) NOT NULL,
    operating_status VARCHAR(16) NOT NULL,
    enabled TINYINT(1) NOT NULL,
    load_balancer_id VARCHAR(36),
    created_at DATETIME,
    updated_at DATETIME,
    provisioning_status VARCHAR(16) NOT NULL,
    tls_certificate_id VARCHAR(255),
    ca_tls_certificate_id VARCHAR(255),
    crl_container_id VARCHAR(255),
    tls_enabled TINYINT(1) NOT NULL DEFAULT 0,
    tls_ciphers VARCHAR(2048),
    tls_versions TEXT,
    alpn_protocols TEXT,
    PRIMARY KEY (id),
    CONSTRAINT fk_pool_protocol_name FOREIGN KEY (protocol) REFERENCES protocol (name),
    CONSTRAINT fk_pool_algorithm_name FOREIGN KEY (lb_algorithm) REFERENCES algorithm (name),
    CONSTRAINT fk_pool_operating_status_name FOREIGN KEY (operating_status)
        REFERENCES operating_status (name),
    CONSTRAINT fk_pool_provisioning_status_name FOREIGN KEY (provisioning_status)
        REFERENCES provisioning_status (name),
    CONSTRAINT fk_pool_load_balancer_id FOREIGN KEY (load_balancer_id)
        REFERENCES load_balancer (id)
) ENGINE=InnoDB;

CREATE TABLE listener (
    project_id VARCHAR(36),
    id VARCHAR(36) NOT NULL,
    name VARCHAR(255),
    description VARCHAR(255),
    protocol VARCHAR(16) NOT NULL,
    protocol_port INT NOT NULL,
    connection_limit INT,
    load_balancer_id VARCHAR(36),
    tls_certificate_id VARCHAR(255),
    default_pool_id VARCHAR(36),
    provisioning_status VARCHAR(16) NOT NULL,
    operating_status VARCHAR(16) NOT NULL,
    enabled TINYINT(1) NOT NULL,
    created_at DATETIME,
    updated_at DATETIME,
    peer_port INT,
    insert_headers BLOB,
    timeout_client_data INT,
    timeout_member_connect INT,
    timeout_member_data INT,
    timeout_tcp_inspect INT,
    client_ca_tls_certificate_id VARCHAR(255),
    client_authentication VARCHAR(10) NOT NULL DEFAULT 'NONE',
    client_crl_container_id VARCHAR(255),
    tls_ciphers VARCHAR(2048),
    tls_versions TEXT,
    alpn_protocols TEXT,
    PRIMARY KEY (id),
    UNIQUE KEY uq_listener_load_balancer_id_protocol_port (load_balancer_id, protocol, protocol_port),
    CONSTRAINT fk_listener_load_balancer_id FOREIGN KEY (load_balancer_id)
        REFERENCES load_balancer (id),
    CONSTRAINT fk_listener_pool_id FOREIGN KEY (default_pool_id) REFERENCES pool (id),
    CONSTRAINT fk_listener_protocol_name FOREIGN KEY (protocol) REFERENCES protocol (name),
    CONSTRAINT fk_listener_provisioning_status_name FOREIGN KEY (provisioning_status)
        REFERENCES provisioning_status (name),
    CONSTRAINT fk_listener_operating_status_name FOREIGN KEY (operating_status)
        REFERENCES operating_status (name),
    CONSTRAINT fk_listener_client_authentication_mode_name FOREIGN KEY (client_authentication)
        REFERENCES client_authentication_mode (name)
) ENGINE=InnoDB;

CREATE TABLE member (
    project_id VARCHAR(36),
    id VARCHAR(36) NOT NULL,
    pool_id VARCHAR(36) NOT NULL,
    subnet_id VARCHAR(36),
    ip_address VARCHAR(64) NOT NULL,
    protocol_port INT NOT NULL,
    weight INT,
    operating_status VARCHAR(16) NOT NULL,
    enabled TINYINT(1) NOT NULL,
    created_at DATETIME,
    updated_at DATETIME,
    provisioning_status VARCHAR(16) NOT NULL,
    name VARCHAR(255),
    monitor_address VARCHAR(64),
    monitor_port INT,
    backup TINYINT(1) NOT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY uq_member_pool_id_address_protocol_port (pool_id, ip_address, protocol_port),
    CONSTRAINT fk_member_pool_id FOREIGN KEY (pool_id) REFERENCES pool (id),
    CONSTRAINT fk_member_operating_status_name FOREIGN KEY (operating_status)
        REFERENCES operating_status (name),
    CONSTRAINT fk_member_provisioning_status_name FOREIGN KEY (provisioning_status)
        REFERENCES provisioning_status (name)
) ENGINE=InnoDB;

CREATE TABLE amphora (
    id VARCHAR(36) NOT NULL,
    compute_id VARCHAR(36),
    status VARCHAR(36) NOT NULL,
    load_balancer_id VARCHAR(36),
    lb_network_ip VARCHAR(64),
    vrrp_ip VARCHAR(64),
    ha_ip VARCHAR(64),
    vrrp_port_id VARCHAR(36),
    ha_port_id VARCHAR(36),
    role VARCHAR(36),
    cert_expiration DATETIME,
    cert_busy TINYINT(1) NOT NULL,
    vrrp_interface VARCHAR(16),
    vrrp_id INT,
    vrrp_priority INT,
    cached_zone VARCHAR(255),
    created_at DATETIME,
    updated_at DATETIME,
    image_id VARCHAR(36),
    compute_flavor VARCHAR(255),
    PRIMARY KEY (id),
    CONSTRAINT fk_container_provisioning_status_name FOREIGN KEY (status)
        REFERENCES provisioning_status (name),
    CONSTRAINT fk_amphora_load_balancer_id FOREIGN KEY (load_balancer_id)
        REFERENCES load_balancer (id),
    CONSTRAINT fk_amphora_roles_name FOREIGN KEY (role) REFERENCES amphora_roles (name)
) ENGINE=InnoDB;

CREATE TABLE amphora_health (
    amphora_id VARCHAR(36) NOT NULL,
    last_update DATETIME NOT NULL,
    busy TINYINT(1) NOT NULL,
    PRIMARY KEY (amphora_id)
) ENGINE=InnoDB;

CREATE TABLE listener_statistics (
    listener_id VARCHAR(36) NOT NULL,
    bytes_in BIGINT NOT NULL,
    bytes_out BIGINT NOT NULL,
    active_connections INT NOT NULL,
    total_connections BIGINT NOT NULL,
    amphora_id VARCHAR(36) NOT NULL,
    request_errors BIGINT NOT NULL,
    PRIMARY KEY (listener_id, amphora_id)
) ENGINE=InnoDB;
