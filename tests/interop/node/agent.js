#!/usr/bin/env node
/*
 * An OpAMP agent built on @elastic/opamp-client-node, driven by tests/interop/test_node_client.py.
 *
 * Usage: node agent.js '<json config>'
 *   endpoint                  OpAMP URL (required)
 *   heartbeatIntervalSeconds  default 1
 *   instanceUid               UUID string; the client makes up a UUIDv7 if absent
 *   capabilities              extra capability names, e.g. ["AcceptsRemoteConfig"]
 *   identifyingAttributes     object
 *   nonIdentifyingAttributes  object
 *   headers                   extra HTTP headers, e.g. {"Authorization": "Bearer <agent key>"}
 *   durationSeconds           shut down after this long; without it, run until stdin says
 *                             "shutdown" or closes
 *   remoteConfig              what to do with a remote config the client hands over (only with
 *                             AcceptsRemoteConfig): "apply" (default: report APPLIED), "fail"
 *                             (report FAILED) or "ignore" (report nothing); reporting needs
 *                             ReportsRemoteConfig
 *
 * Every diagnostics_channel event of the client (send.success, send.fail, send.schedule) is printed
 * on stdout as one JSON line, followed by {"name":"started"} / {"name":"shutdown"} markers. Each
 * remote config the client hands to `onMessage` is printed as {"name":"remoteConfig", "configHash",
 * "files": {name: {"contentType", "body"}}} (bodies as UTF-8 text). Bytes elsewhere are printed as
 * UUID strings (16 bytes) or hex, BigInts as numbers.
 */
'use strict';

const diagch = require('diagnostics_channel');
const readline = require('readline');
const {
    createOpAMPClient,
    AgentCapabilities,
    RemoteConfigStatuses,
    DIAG_CH_SEND_SUCCESS,
    DIAG_CH_SEND_FAIL,
    DIAG_CH_SEND_SCHEDULE,
} = require('@elastic/opamp-client-node');

function hex(bytes) {
    return Buffer.from(bytes).toString('hex');
}

function bytesText(bytes) {
    if (bytes.length !== 16) {
        return hex(bytes);
    }
    const h = hex(bytes);
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

function replacer(_key, value) {
    if (typeof value === 'bigint') {
        return Number(value);
    }
    if (value instanceof Uint8Array) {
        return bytesText(value);
    }
    if (value instanceof Error) {
        return {error: value.name, message: value.message, code: value.code};
    }
    return value;
}

function emit(event) {
    process.stdout.write(JSON.stringify(event, replacer) + '\n');
}

function main() {
    const config = JSON.parse(process.argv[2] || '{}');
    if (!config.endpoint) {
        throw new Error('config.endpoint is required');
    }
    let capabilities = 0n;
    for (const name of config.capabilities || []) {
        const bit = AgentCapabilities[`AgentCapabilities_${name}`];
        if (bit === undefined) {
            throw new Error(`unknown capability ${name}`);
        }
        capabilities |= BigInt(bit);
    }

    for (const ch of [DIAG_CH_SEND_SUCCESS, DIAG_CH_SEND_FAIL, DIAG_CH_SEND_SCHEDULE]) {
        diagch.subscribe(ch, (message) => emit(message));
    }

    const onRemoteConfig = config.remoteConfig ?? 'apply';
    if (!['apply', 'fail', 'ignore'].includes(onRemoteConfig)) {
        throw new Error(`unknown remoteConfig behaviour ${onRemoteConfig}`);
    }
    // Assigned below: onMessage runs only after a reply, so never before createOpAMPClient returns.
    let client = null;
    function onMessage({remoteConfig}) {
        if (!remoteConfig) {
            return;
        }
        const files = {};
        for (const [name, file] of Object.entries(remoteConfig.config?.configMap ?? {})) {
            files[name] = {contentType: file.contentType, body: Buffer.from(file.body).toString('utf8')};
        }
        emit({name: 'remoteConfig', time: Date.now(), configHash: hex(remoteConfig.configHash), files});
        if (onRemoteConfig === 'ignore') {
            return;
        }
        const applied = onRemoteConfig === 'apply';
        client.setRemoteConfigStatus({
            lastRemoteConfigHash: remoteConfig.configHash,
            status: applied
                ? RemoteConfigStatuses.RemoteConfigStatuses_APPLIED
                : RemoteConfigStatuses.RemoteConfigStatuses_FAILED,
            errorMessage: applied ? '' : 'agent.js was told to fail',
        });
    }

    client = createOpAMPClient({
        endpoint: config.endpoint,
        instanceUid: config.instanceUid,
        capabilities,
        heartbeatIntervalSeconds: config.heartbeatIntervalSeconds ?? 1,
        headers: config.headers,
        diagEnabled: true,
        onMessage,
    });
    client.setAgentDescription({
        identifyingAttributes: config.identifyingAttributes || {},
        nonIdentifyingAttributes: config.nonIdentifyingAttributes || {},
    });
    client.start();
    emit({name: 'started', time: Date.now(), instanceUidStr: bytesText(client.getInstanceUid())});

    // The client's timers are unref'ed; this one keeps the process alive until shutdown.
    const keepAlive = setInterval(() => {}, 60 * 1000);
    let lines = null;
    let stopping = false;
    async function shutdown(reason) {
        if (stopping) {
            return;
        }
        stopping = true;
        clearInterval(keepAlive);
        await client.shutdown();
        emit({name: 'shutdown', time: Date.now(), reason, instanceUidStr: bytesText(client.getInstanceUid())});
        // Let the process end by itself: a handle the client left open would show as a hang.
        if (lines) {
            lines.close();
            process.stdin.destroy();
        }
    }

    if (config.durationSeconds) {
        setTimeout(() => shutdown('duration'), config.durationSeconds * 1000);
    } else {
        lines = readline.createInterface({input: process.stdin});
        lines.on('line', (line) => {
            if (line.trim() === 'shutdown') {
                shutdown('stdin');
            }
        });
        lines.on('close', () => shutdown('stdin closed'));
    }
    process.on('SIGTERM', () => shutdown('SIGTERM'));
}

main();
