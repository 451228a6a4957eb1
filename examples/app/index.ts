import { defineApp } from '../../shared/app.js';
import { joinMeeting } from './join-meeting.js';
import { exampleMigrations } from './migrations.js';

/** The example app of DESIGN.md: what `npm run demo` runs and what the default DW_APP serves. */
export const app = defineApp({
  name: 'example',
  handlers: [joinMeeting],
  sagas: [],
  migrations: exampleMigrations,
});

export default app;
