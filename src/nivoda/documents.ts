// The GraphQL documents the client sends (contract/nivoda.graphql) and the shapes they return.

export const MAX_SEARCH_LIMIT = 50;

export const AUTH_DOCUMENT = `query Authenticate($username: String!, $password: String!) {
  authenticate { username_and_password(username: $username, password: $password) { token } }
}`;

export const COUNT_DOCUMENT = `query DiamondsCount($token: String!, $query: DiamondQuery!) {
  as(token: $token) { diamonds_by_query_count(query: $query) }
}`;

export const SEARCH_DOCUMENT = `query Diamonds($token: String!, $query: DiamondQuery!, $offset: Int, $limit: Int, $order: DiamondOrder) {
  as(token: $token) {
    diamonds_by_query(query: $query, offset: $offset, limit: $limit, order: $order) {
      total_count
      items {
        id price
        diamond {
          id availability updated image video
          certificate { certNumber lab shape carats color clarity cut labgrown }
        }
      }
    }
  }
}`;

export interface Certificate {
  certNumber?: string | null;
  lab?: string | null;
  shape: string;
  carats: number;
  color?: string | null;
  clarity?: string | null;
  cut?: string | null;
  labgrown?: boolean | null;
}

export interface Offer {
  id: string;
  /** US cents. */
  price: number;
  diamond: {
    id: string;
    availability: string;
    updated: string;
    image?: string | null;
    video?: string | null;
    certificate: Certificate;
  };
}

export interface SearchOrder {
  type: 'createdAt' | 'price' | 'price_per_carat' | 'size';
  direction: 'ASC' | 'DESC';
}

export interface SearchPage {
  offset: number;
  limit: number;
  order?: SearchOrder;
}

/** Follows `path` through nested objects; undefined where a step is missing. */
export function dig(value: unknown, path: readonly string[]): unknown {
  let current = value;
  for (const key of path) {
    if (current === null || typeof current !== 'object') return undefined;
    current = (current as Record<string, unknown>)[key];
  }
  return current;
}
