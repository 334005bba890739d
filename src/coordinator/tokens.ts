/**
 * One-time join tokens: created through the API, consumed by one agent's
 * join. Only a hash of the secret is stored; a token is refused when
 * unknown, expired, already used, or issued for another name.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { CanopyError } from '../errors/index.js';
import { encodeJoinToken } from '../protocol/index.js';
import type { Store, TokenRecord } from './store.js';

const hash = (s: string) => createHash('sha256').update(s).digest('hex');

export class TokenService {
  /** Ids being consumed right now: a second join with the same token must not slip in between read and write. */
  private readonly inFlight = new Set<string>();

  constructor(
    private readonly store: Store,
    private readonly url: () => string,
    private readonly caFingerprint: string,
    private readonly now: () => number = Date.now,
  ) {}

  async create(opts: {
    ttlMs: number;
    name?: string;
  }): Promise<{ token: string; id: string; expiresAt: number }> {
    const id = randomBytes(9).toString('base64url');
    const secret = randomBytes(24).toString('base64url');
    const record: TokenRecord = {
      id,
      secretHash: hash(secret),
      createdAt: this.now(),
      expiresAt: this.now() + opts.ttlMs,
      ...(opts.name ? { name: opts.name } : {}),
    };
    await this.store.commit([this.store.put(this.store.tokens, id, record)]);
    return {
      token: encodeJoinToken({ url: this.url(), caFingerprint: this.caFingerprint, id, secret }),
      id,
      expiresAt: record.expiresAt,
    };
  }

  /** Checks and burns a token for NAME; throws TOKEN_* errors. Callers serialize (one event loop). */
  async consume(id: string, secret: string, name: string): Promise<TokenRecord> {
    if (this.inFlight.has(id)) {
      throw new CanopyError('TOKEN_USED', `join token ${id} is being used by another join right now`);
    }
    this.inFlight.add(id);
    try {
      return await this.consumeOnce(id, secret, name);
    } finally {
      this.inFlight.delete(id);
    }
  }

  private async consumeOnce(id: string, secret: string, name: string): Promise<TokenRecord> {
    const record = await this.store.tokens.get(id);
    const given = Buffer.from(hash(secret), 'hex');
    if (!record || !timingSafeEqual(given, Buffer.from(record.secretHash, 'hex'))) {
      throw new CanopyError(
        'TOKEN_INVALID',
        `join token ${id} is not one this coordinator issued (or its secret is wrong)`,
      );
    }
    if (record.usedAt !== undefined) {
      throw new CanopyError(
        'TOKEN_USED',
        `join token ${id} was already used by agent "${record.usedBy}" at ${new Date(record.usedAt).toISOString()}; create a new one with: canopy token create`,
      );
    }
    if (record.expiresAt <= this.now()) {
      throw new CanopyError(
        'TOKEN_EXPIRED',
        `join token ${id} expired at ${new Date(record.expiresAt).toISOString()}; create a new one with: canopy token create`,
      );
    }
    if (record.name !== undefined && record.name !== name) {
      throw new CanopyError(
        'TOKEN_NAME_MISMATCH',
        `join token ${id} was created for "${record.name}", not "${name}"; join with --name ${record.name} or create a token for ${name}`,
      );
    }
    const used = { ...record, usedAt: this.now(), usedBy: name };
    await this.store.commit([this.store.put(this.store.tokens, id, used)]);
    return used;
  }
}
