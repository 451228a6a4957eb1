import type { DemoContext } from './context.js';

/** Issue 3 fills this in: the four BookTrip cases and their timelines. */
export async function bookTripDemo(_ctx: DemoContext): Promise<void> {}
